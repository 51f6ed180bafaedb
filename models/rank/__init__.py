"""Ranking (CTR) models; each subpackage registers one model under its folder name (imported on first use by
`ctrkit.zoo.get_model_class`)."""
