"""Model loading from local folders or the local Hugging Face cache only; never from the network."""
