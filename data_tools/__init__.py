"""Raw sources -> canonical dataset folders (`python -m data_tools prepare ...`)."""
