"""The OCI runtime spec each container option builds (#13, ADR 42), and what the containerd driver
reads from the node and the image for it: devices, capabilities, users and groups, resolv.conf."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from warren import container, model
from warren.agent.runtime import ContainerSpec, RuntimeFailure
from warren.runtime import resolv
from warren.runtime.containerd import nodeside
from warren.runtime.containerd.oci import (
    INIT_PATH,
    HostDevice,
    ImageUsers,
    SpecError,
    build_spec,
    needs_image_users,
    parse_user,
)
from warren.runtime.resolv import resolv_conf_text

Options = model.ContainerOptions


# -- the OCI spec ---------------------------------------------------------------------------------
IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["PATH=/bin"], "WorkingDir": "/app"}


def oci(
    devices: tuple[HostDevice, ...] = (),
    init_binary: str = "",
    image: dict[str, object] = IMAGE,
    available_capabilities: list[str] | None = None,
    image_users: ImageUsers | None = None,
    **kw: object,
) -> dict:  # type: ignore[type-arg]
    fields = {k: kw.pop(k) for k in list(kw) if k in ContainerSpec.__struct_fields__}
    spec = ContainerSpec(task_id="t1", image="busybox", options=Options(**kw), **fields)  # type: ignore[arg-type]
    caps = container.ALL_CAPABILITIES if available_capabilities is None else available_capabilities
    return build_spec(
        spec,
        image,
        "/w/t1",
        host_files=[],
        devices=devices,
        init_binary=init_binary,
        available_capabilities=caps,
        image_users=image_users,
    )


def test_default_spec_is_unchanged_by_options() -> None:
    spec = oci()
    assert spec["process"]["capabilities"]["effective"] == list(container.DEFAULT_CAPABILITIES)
    assert "rlimits" not in spec["process"] and "sysctl" not in spec["linux"] and "devices" not in spec["linux"]
    assert spec["process"]["noNewPrivileges"] is True and spec["linux"]["maskedPaths"]
    assert spec["hostname"] == "t1" and "HOSTNAME=t1" in spec["process"]["env"]


def test_spec_applies_each_option() -> None:
    spec = oci(
        hostname="web-1",
        cwd="/srv",
        user="1000:1000",
        read_only_rootfs=True,
        cap_add=("NET_ADMIN",),
        cap_drop=("CHOWN",),
        sysctls={"kernel.shmmax": "4096"},
        ulimits=(model.Ulimit("nofile", 100, 200),),
        group_add=("10", "20"),
    )
    process = spec["process"]
    caps = process["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    assert process["cwd"] == "/srv" and spec["root"]["readonly"] is True
    assert spec["linux"]["sysctl"] == {"kernel.shmmax": "4096"}
    assert spec["hostname"] == "web-1" and "HOSTNAME=web-1" in process["env"]
    assert "HOSTNAME=mine" in oci(hostname="web-1", env={"HOSTNAME": "mine"})["process"]["env"]
    with pytest.raises(SpecError, match="not numeric"):
        oci(group_add=("audio",))


def test_init_wraps_the_process_and_mounts_the_binary() -> None:
    spec = oci(init=True, init_binary="/usr/bin/tini-static", args=("sleep", "1"))
    assert spec["process"]["args"] == [INIT_PATH, "--", "/entry", "sleep", "1"]
    assert {
        "destination": INIT_PATH,
        "type": "bind",
        "source": "/usr/bin/tini-static",
        "options": ["rbind", "ro", "nosuid"],
    } in spec["mounts"]
    with pytest.raises(SpecError, match="tini"):
        oci(init=True)


def test_devices_and_privileged() -> None:
    fuse = HostDevice("/dev/fuse", "c", 10, 229, 0o666, "rw")
    spec = oci(devices=(fuse,))
    assert spec["linux"]["devices"] == [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}
    ]
    assert {"allow": True, "type": "c", "access": "rw", "major": 10, "minor": 229} in spec["linux"]["resources"][
        "devices"
    ]
    privileged = oci(privileged=True)
    assert privileged["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert privileged["linux"]["maskedPaths"] == [] and privileged["linux"]["readonlyPaths"] == []
    assert privileged["process"]["noNewPrivileges"] is False
    sys_mount = next(m for m in privileged["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sys_mount["options"]


def test_resolv_conf_follows_dns_options() -> None:
    base = "nameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch a.org b.org\noptions ndots:1\n# comment\n"
    assert (
        resolv_conf_text(base, Options())
        == "nameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch a.org b.org\noptions ndots:1\n"
    )
    text = resolv_conf_text(base, Options(dns=("9.9.9.9",), dns_search=("c.org",), dns_options=("ndots:3", "rotate")))
    assert text == "nameserver 9.9.9.9\nsearch c.org\noptions ndots:3 rotate\n"
    assert "search" not in resolv_conf_text(base, Options(dns_search=(".",)))


def test_task_resolv_conf_is_written_only_with_dns_options(tmp_path: Path) -> None:
    base = tmp_path / "node.conf"
    base.write_text("nameserver 10.0.0.1\n")
    plain = ContainerSpec(task_id="t1", image="x", resolv_conf=str(base))
    assert resolv.task_resolv_conf(plain, tmp_path / "r") == str(base)
    spec = msgspec.structs.replace(plain, options=Options(dns_options=("ndots:4",)))
    path = Path(resolv.task_resolv_conf(spec, tmp_path / "r"))
    assert path.read_text() == "nameserver 10.0.0.1\noptions ndots:4\n"
    assert os.stat(path).st_mode & 0o777 == 0o644
    resolv.remove_resolv_conf("t1", tmp_path / "r")
    assert not path.exists()


def test_devices_are_resolved_on_the_node(tmp_path: Path) -> None:
    (null,) = nodeside.resolve_device(model.DeviceMapping("/dev/null", "/dev/mynull", "r"))
    assert (null.path, null.kind, null.major, null.minor, null.permissions) == ("/dev/mynull", "c", 1, 3, "r")
    with pytest.raises(RuntimeFailure, match=r"error gathering device information.*/dev/nope.*no such file") as missing:
        nodeside.resolve_device(model.DeviceMapping("/dev/nope"))
    assert missing.value.permanent
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(RuntimeFailure, match="not a device node"):
        nodeside.resolve_device(model.DeviceMapping(str(regular)))
    everything = nodeside.all_host_devices()
    assert any(d.path == "/dev/null" for d in everything)
    assert not any(d.path.startswith("/dev/pts/") for d in everything)


def test_node_capabilities_are_its_bounding_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapBnd:\t0000000000000005\n")
    assert nodeside.node_capabilities(str(status)) == ["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]
    assert nodeside.node_capabilities(str(tmp_path / "missing")) == list(container.ALL_CAPABILITIES)
    privileged = oci(privileged=True, available_capabilities=["CAP_CHOWN"])
    assert privileged["process"]["capabilities"]["effective"] == ["CAP_CHOWN"]


# -- user and group names, from the image's own files ---------------------------------------------
PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\nbroken\nbad:x:a:b::/:/\n"
GROUP = "root:x:0:\nwww-data:x:34:\naudio:x:29:www\n"


def test_names_are_resolved_from_the_images_files() -> None:
    users = ImageUsers.parse(PASSWD, GROUP)
    assert users.users == {"root": (0, 0), "www": (33, 34)} and users.groups["audio"] == 29
    assert parse_user("www", users) == (33, 34)
    assert parse_user("www:audio", users) == (33, 29)
    assert parse_user("1000:audio", users) == (1000, 29)
    assert parse_user("7", users) == (7, 7)  # a number needs no entry
    with pytest.raises(SpecError, match="unable to find user 'nobody'"):
        parse_user("nobody", users)
    with pytest.raises(SpecError, match="unable to find group 'video'"):
        parse_user("www:video", users)
    with pytest.raises(SpecError, match="not numeric"):
        parse_user("www")  # no files read: a name cannot be resolved
    process = oci(image_users=users, user="www", group_add=("audio", "5"))["process"]
    assert process["user"] == {"uid": 33, "gid": 34, "additionalGids": [29, 5]}


def test_files_are_read_only_when_a_name_is_given() -> None:
    def needs(user: str = "", groups: tuple[str, ...] = (), image_user: str = "") -> bool:
        spec = ContainerSpec(task_id="t", image="x", user=user, options=Options(group_add=groups))
        return needs_image_users(spec, {"User": image_user})

    assert not needs() and not needs("0:0") and not needs("root") and not needs(groups=("10",))
    assert needs("www") and needs("0:audio") and needs(groups=("audio",)) and needs(image_user="www")


def test_image_users_are_read_through_the_rootfs_mounts(tmp_path: Path) -> None:
    upper, top, base = (tmp_path / d for d in ("upper", "top", "base"))
    for directory in (upper, top, base):
        (directory / "etc").mkdir(parents=True)
    (top / "etc" / "passwd").write_text("app:x:70:70::/:/bin/sh\n")  # the top layer's copy wins
    (base / "etc" / "passwd").write_text("old:x:1:1::/:/bin/sh\n")
    (base / "etc" / "group").write_text("app:x:71:\n")

    class Mount:  # the fields of a containerd Mount
        type = "overlay"
        source = "overlay"
        options = [f"workdir={tmp_path}/w", f"upperdir={upper}", f"lowerdir={top}:{base}"]

    users = nodeside.read_image_users([Mount()])
    assert users.users == {"app": (70, 70)} and users.groups == {"app": 71}


def test_a_device_is_created_once_even_with_privileged() -> None:
    spec = ContainerSpec(
        task_id="t", image="x", options=Options(privileged=True, devices=(model.DeviceMapping("/dev/null", "", "r"),))
    )
    devices = nodeside.task_devices(spec)
    nulls = [d for d in devices if d.path == "/dev/null"]
    assert len(nulls) == 1 and nulls[0].permissions == "r"
    assert len({d.path for d in devices}) == len(devices)
