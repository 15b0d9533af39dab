"""The composition root (SwarmKit's node/node.go): runs this machine's agent, its manager, or
both, and the manager a promoted worker becomes. warren.manager and warren.agent never import
each other; only this package builds both from the settings (ADR 27)."""
