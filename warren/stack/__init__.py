"""Stacks (#14): Compose files loaded into a `StackSpec`, planned against the cluster state and
deployed as one replicated command."""
