"""Maintenance, export, reporting and import: plain functions over the SQLite file, called by `chatledger`.

Nothing here knows about click; progress is reported through optional callbacks.
"""
