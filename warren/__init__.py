"""Warren, a container orchestrator.

gRPC's C core registers fork handlers (pthread_atfork) that wait for its threads to quiesce.
pyroute2 forks a short-lived child for every socket it opens in another network namespace
(agents do this for every task), and a fork beside live gRPC threads can then block for good
in that handler (grpc/grpc#31885; seen in the test suite, ADR 41). No forked child of ours uses
gRPC, so the handlers are turned off before anything imports grpc, unless the environment says
otherwise.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
