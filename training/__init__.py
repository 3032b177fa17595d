"""Recipe-driven training: YAML recipes, data, collator, trainer."""
