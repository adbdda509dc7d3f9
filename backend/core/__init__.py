"""The vocabulary every layer shares: settings, typed errors, atomic files, the architecture
catalogue. Imports no other backend package."""
