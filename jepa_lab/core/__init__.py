"""The model and its objective: masks, the ViT encoder and predictor, the JEPA loss and the
collapse-prevention strategies (torch and timm only)."""
