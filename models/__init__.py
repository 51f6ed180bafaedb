"""The model zoo: shared building blocks (`models.layers`), a registry (`models.registry`) and one package
per model under `models/rank/<name>/` (code + config.yaml + config_bigdata.yaml)."""
