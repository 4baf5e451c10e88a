"""Running a suite: scenarios, trials, servers and load generators started, shown."""
