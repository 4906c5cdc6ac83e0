"""nic layer."""
