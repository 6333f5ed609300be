"""Publishing a trained result: the Hugging Face upload with its model card (hub)."""
