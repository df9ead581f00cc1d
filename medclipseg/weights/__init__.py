"""Where weights come from and the formats they are stored in: sources (path, hf://, package://), our safetensors format, the authors' .pth layout."""
