"""The data layer: corpora, tokenizers, the token cache, token windows and the LightningDataModule."""
