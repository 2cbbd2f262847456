"""Devices a benchmark runs on: this host, boards over SSH, phones over adb (see devices/*.yaml)."""
