"""The consented layer (group `consented`): raw data pseudonymized per policy and kept where consent allows."""
