"""The control plane: the live routing state, experiment changes, model registrations,
runtime API keys and tenants, LoRA adapters, the A/B report and the decider's automatic
decisions."""
