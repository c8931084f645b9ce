"""mirrorspec: lossless speculative decoding (ar, chain, tree) on Hugging Face causal LMs."""
