"""Everything cft reads or writes on disk: atomic writes, safetensors helpers, backbone and bundle files, run folders."""
