"""The fleet: inventory (which hosts), planner (pure: desired x observed -> steps and waves),
rollout (canary, waves, halt/rollback), deploy (wiring them to the transport), report (rendering)."""
