"""gRPC metadata keys the managers and their clients agree on."""

# Request metadata: make this call's reads linearizable (a Raft read barrier first).
CONSISTENT_KEY = "warren-consistent"
# Response trailer on Control calls: every manager's API address, so clients follow membership.
MANAGERS_KEY = "warren-managers"
