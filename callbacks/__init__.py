"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works.
"""
