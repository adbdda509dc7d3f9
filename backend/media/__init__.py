"""Task media: fetching images from the addresses it checked (Label Studio, Azure SAS, allowed
hosts) and decoding them."""
