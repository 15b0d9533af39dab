"""The keys of the Compose Specification, and which of them Warren maps (#14, ADR 48). Pure.

A key in `SUPPORTED` is mapped to Warren's spec; a key only in `KNOWN` is valid Compose that
Warren does not honour: it becomes a finding (refused unless --allow-unsupported), never a
silent drop. A key in neither is not Compose at all (a typo): an error. `x-` keys are
extensions the specification lets tools ignore, and are ignored.
"""

from __future__ import annotations

TOP_SUPPORTED = frozenset({"name", "services", "networks", "volumes", "secrets", "configs"})
TOP_KNOWN = TOP_SUPPORTED | {"version", "include", "models"}
TOP_IGNORED = frozenset({"version"})  # obsolete, and ignored by Compose itself

SERVICE_SUPPORTED = frozenset(
    {
        "image", "command", "entrypoint", "environment", "env_file", "ports", "deploy", "healthcheck",
        "secrets", "configs", "volumes", "tmpfs", "networks", "depends_on", "hostname", "user",
        "working_dir", "read_only", "cap_add", "cap_drop", "sysctls", "ulimits", "init",
        "stop_grace_period", "stop_signal", "labels", "restart", "privileged", "devices", "dns",
        "dns_search", "dns_opt", "group_add", "cpus", "mem_limit", "mem_reservation", "scale",
    }
)  # fmt: skip
SERVICE_KNOWN = SERVICE_SUPPORTED | {
    "annotations", "attach", "blkio_config", "build", "cgroup", "cgroup_parent", "container_name",
    "cpu_count", "cpu_percent", "cpu_shares", "cpu_quota", "cpu_period", "cpu_rt_period",
    "cpu_rt_runtime", "cpuset", "credential_spec", "develop", "device_cgroup_rules", "domainname",
    "expose", "extends", "external_links", "extra_hosts", "gpus", "ipc", "isolation", "label_file",
    "links", "logging", "mac_address", "mem_swappiness", "memswap_limit", "models", "network_mode",
    "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "post_start", "pre_stop",
    "profiles", "provider", "pull_policy", "pull_refresh_after", "runtime", "security_opt", "shm_size",
    "stdin_open", "storage_opt", "tty", "use_api_socket", "userns_mode", "uts", "volumes_from",
}  # fmt: skip

DEPLOY_SUPPORTED = frozenset(
    {"mode", "replicas", "placement", "resources", "restart_policy", "update_config", "rollback_config", "labels",
     "endpoint_mode"}
)  # fmt: skip
DEPLOY_KNOWN = DEPLOY_SUPPORTED
PLACEMENT_SUPPORTED = frozenset({"constraints", "preferences"})
PLACEMENT_KNOWN = PLACEMENT_SUPPORTED | {"max_replicas_per_node"}
RESOURCES_SUPPORTED = frozenset({"limits", "reservations"})
LIMITS_SUPPORTED = frozenset({"cpus", "memory"})
LIMITS_KNOWN = LIMITS_SUPPORTED | {"pids"}
RESERVATIONS_KNOWN = LIMITS_SUPPORTED | {"generic_resources", "devices"}
RESTART_POLICY_KNOWN = frozenset({"condition", "delay", "max_attempts", "window"})
UPDATE_CONFIG_KNOWN = frozenset({"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"})

HEALTHCHECK_SUPPORTED = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
HEALTHCHECK_KNOWN = HEALTHCHECK_SUPPORTED | {"start_interval"}

PORT_SUPPORTED = frozenset({"target", "published", "protocol", "mode"})
PORT_KNOWN = PORT_SUPPORTED | {"name", "host_ip", "app_protocol"}

VOLUME_MOUNT_SUPPORTED = frozenset({"type", "source", "target", "read_only", "tmpfs"})
VOLUME_MOUNT_KNOWN = VOLUME_MOUNT_SUPPORTED | {"consistency", "bind", "volume", "image"}
TMPFS_KNOWN = frozenset({"size", "mode"})

FILE_REF_KNOWN = frozenset({"source", "target", "uid", "gid", "mode"})

SERVICE_NETWORK_SUPPORTED = frozenset({"aliases"})
SERVICE_NETWORK_KNOWN = SERVICE_NETWORK_SUPPORTED | {
    "interface_name", "ipv4_address", "ipv6_address", "link_local_ips", "mac_address", "driver_opts",
    "priority", "gw_priority",
}  # fmt: skip

DEPENDS_ON_SUPPORTED = frozenset({"condition", "required"})
DEPENDS_ON_KNOWN = DEPENDS_ON_SUPPORTED | {"restart"}

NETWORK_SUPPORTED = frozenset({"name", "driver", "external", "internal", "attachable", "labels", "ipam"})
NETWORK_KNOWN = NETWORK_SUPPORTED | {"driver_opts", "enable_ipv4", "enable_ipv6"}
IPAM_SUPPORTED = frozenset({"config"})
IPAM_KNOWN = IPAM_SUPPORTED | {"driver", "options"}
IPAM_CONFIG_SUPPORTED = frozenset({"subnet"})
IPAM_CONFIG_KNOWN = IPAM_CONFIG_SUPPORTED | {"ip_range", "gateway", "aux_addresses"}

VOLUME_SUPPORTED = frozenset({"name", "driver", "driver_opts", "external", "labels"})
VOLUME_KNOWN = VOLUME_SUPPORTED

SECRET_SUPPORTED = frozenset({"name", "file", "environment", "external", "labels"})
SECRET_KNOWN = SECRET_SUPPORTED | {"driver", "driver_opts", "template_driver"}
CONFIG_SUPPORTED = SECRET_SUPPORTED | {"content"}
CONFIG_KNOWN = CONFIG_SUPPORTED | {"template_driver"}

# Why a few common keys are not honoured, for the finding's message.
REASONS = {
    "build": "Warren runs images: build and push the image first",
    "container_name": "a service's tasks are named by Warren",
    "links": "services on a network resolve each other by name",
    "expose": "every port of a task is reachable on its networks; publish with ports:",
    "network_mode": "tasks run on Warren's overlay",
    "logging": "task logs go to `warren service logs`",
    "profiles": "a stack deploys all its services",
    "extends": "merge files with several -c instead",
    "endpoint_mode": "Warren gives every service a virtual IP (vip)",
    "spread": "Warren spreads tasks over nodes, not over the values of a node label",
    "host_ip": "a published port listens on every address of the node",
}
