"""The exec runtime: tasks as plain host processes (ADR 5). Its rules are in `driver`; starting
a container's process (`spawn`), the process chain, procfs identity, user resolution and cgroups
each have a module."""

from warren.runtime.exec.driver import ExecRuntime

__all__ = ["ExecRuntime"]
