"""lit-grok: the Dyck-1 and SCAN grokking experiments of "The Lifecycle of the Spectral Edge" in Lightning."""
