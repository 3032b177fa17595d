"""The model kernel: config, token layout, OmniLM, checkpoints, tokenizer, sampling, generation, decoding
strategies, quantisation. Shared by inference and training; imports nothing from the runtime."""
