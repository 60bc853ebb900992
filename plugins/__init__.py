"""lmzoo's built-in components. Each module is a pluggy plugin found through the `lmzoo`
entry-point group, exactly as a third-party package's would be; the core imports none of them."""
