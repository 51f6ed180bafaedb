"""Ranking (CTR) models; each subpackage registers one model under its folder name."""
