"""Raw dataset formats shared by the synthetic writers and the builder readers."""
