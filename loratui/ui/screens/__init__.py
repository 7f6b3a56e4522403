"""The dashboard's dialogs and full-screen views, one per module."""
