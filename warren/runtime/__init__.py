"""Container runtime drivers implementing `warren.agent.runtime.Runtime`: containerd and exec."""
