"""Text distillation: a pretrained Hugging Face sentence encoder (all-MiniLM-L6-v2 by default) taught to a
tiny on-device text student, on English text that ships with Python (no downloads at run time)."""
