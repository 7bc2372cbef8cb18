"""One platform table (runtime/platforms.py) that every side reads."""
from orchestrator.manifest.units import PLATFORM_ARCH, PLATFORMS
from runtime import platforms
from runtime.hostinfo import host_platform


def test_the_agent_names_a_host_by_the_table():
    assert [platforms.from_machine(m) for m in ("x86_64", "aarch64", "armv7l")] == list(platforms.NAMES)
    assert platforms.from_machine("armv6l") == "linux/armv6l"        # not a supported platform
    assert host_platform("/nonexistent") in platforms.NAMES


def test_the_loader_and_builder_read_the_same_table():
    assert PLATFORMS == platforms.NAMES
    assert PLATFORM_ARCH["linux/arm/v7"] == ("arm", "v7", "armhf")
