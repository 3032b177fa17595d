"""Built-in plugins; each registers through the same pluggy hooks as a third-party package."""
