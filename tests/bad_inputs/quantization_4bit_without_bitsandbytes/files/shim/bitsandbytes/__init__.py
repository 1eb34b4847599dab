raise ImportError("bitsandbytes cannot run here (bad-input corpus shim)")
