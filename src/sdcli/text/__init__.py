"""Text: prompt syntax (emphasis, BREAK), tokenizing and encoding, and the conditioning the U-Net takes."""
