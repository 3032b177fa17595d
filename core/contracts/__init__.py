"""What a plugin implements and how plugins are found: the codec and encoder contracts, the hook
specifications and the plugin manager."""
