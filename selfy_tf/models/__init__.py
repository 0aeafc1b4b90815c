"""Model zoo: TSN / TSM / SELFYNet ResNets by name."""
