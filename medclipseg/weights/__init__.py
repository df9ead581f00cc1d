"""Where weights come from and the formats they are stored in: sources (path, hf://, package://,
the shipped assets), our safetensors format, the authors' .pth layout, and the towers a folder
of ours does not store (external). Load models with ``medclipseg.registry.load_model``."""
