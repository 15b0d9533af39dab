"""The node's WireGuard key ring (ADR 18): epoch 0 made at join, rotation pairs beside it, one
small file saying which is in use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from warren.network import keys


def test_a_rotation_makes_a_pending_pair_then_switches_to_it(tmp_path: Path) -> None:
    ring = keys.KeyRing(tmp_path)
    assert ring.active() is None and ring.pending() is None
    first = ring.ensure()
    assert ring.ensure() == first  # made once
    active = ring.active()
    assert active is not None and (active.epoch, active.public_key) == (0, first)

    second = ring.create(1)
    pending = ring.pending()
    assert pending is not None and (pending.epoch, pending.public_key) == (1, second)
    assert ring.active() == active  # not in use until activated
    assert pending.private_path.stat().st_mode & 0o777 == 0o600
    assert keys.public_key_of(keys.read_key_file(pending.private_path)) == second

    ring.activate(1)
    now = ring.active()
    assert now is not None and (now.epoch, now.public_key) == (1, second)
    assert ring.pending() is None and ring.ensure() == second
    assert not (ring.directory / keys.PRIVATE_KEY_FILE).exists()  # the old private key is gone

    ring.create(2)
    ring.activate(2)
    assert not (ring.directory / "epoch-1").exists()


def test_a_half_made_pair_is_not_offered_and_epochs_only_go_up(tmp_path: Path) -> None:
    ring = keys.KeyRing(tmp_path)
    ring.ensure()
    (ring.directory / "epoch-1").mkdir()
    keys.write_key_file(ring.directory / "epoch-1" / keys.PRIVATE_KEY_FILE, keys.generate_private_key())
    assert ring.pending() is None  # no public key written yet: a crash while making it
    with pytest.raises(keys.WireGuardError, match="no key pair of epoch 1"):
        ring.activate(1)
    ring.create(1)
    ring.activate(1)
    with pytest.raises(keys.WireGuardError, match="not above"):
        ring.create(1)


def test_the_command_line_makes_a_pair_for_the_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys.KeyRing(tmp_path).ensure()
    assert keys.main(["create", str(tmp_path), "3"]) == 0
    pending = keys.KeyRing(tmp_path).pending()
    assert pending is not None and capsys.readouterr().out.strip() == pending.public_key
    assert keys.main(["create", str(tmp_path)]) == 2
    assert keys.main(["create", str(tmp_path), "0"]) == 1
    assert "not above" in capsys.readouterr().err


def test_the_ring_names_the_public_key_of_a_key_it_holds_without_cryptography(tmp_path: Path) -> None:
    """The agent asks for its device's public key at every converge (overlay metrics); deriving
    it loaded `cryptography` into every agent on the overlay, about 7 MiB (#15)."""
    ring = keys.KeyRing(tmp_path)
    ring.ensure()
    ring.create(1)
    held = {
        pair.epoch: (keys.read_key_file(pair.private_path), pair.public_key)
        for pair in (ring.active(), ring.pending())
        if pair
    }
    assert sorted(held) == [0, 1]
    script = f"""
import sys
import subprocess
import sys
from pathlib import Path
from warren.network import keys
ring = keys.KeyRing(Path({str(tmp_path)!r}))
old, new = {held[0]!r}, {held[1]!r}
assert ring.public_of(old[0]) == old[1]
ring.activate(1)  # deletes the old pair's files while the device still holds that key
assert ring.public_of(old[0]) == old[1] and ring.public_of(new[0]) == new[1]
assert "cryptography" not in sys.modules, "the ring derived a key it holds"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # A key the ring never held is still derived.
    stranger = keys.generate_private_key()
    assert keys.KeyRing(tmp_path).public_of(stranger) == keys.public_key_of(stranger)


def test_an_agent_imports_neither_cryptography_nor_the_managers_state_and_commands() -> None:
    """What an idle agent keeps loaded is its memory (issue #3's goal, 60 MB on the overlay)."""
    script = (
        "import sys, warren.agent.daemon\n"
        "print(sorted(m for m in sys.modules if m in ('cryptography', 'warren.state', 'warren.scheduler')"
        " or m.startswith('warren.commands')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
