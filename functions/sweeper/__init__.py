"""SweeperFunction: writes the `abandoned` manifest of attempts whose trainer died without one."""
