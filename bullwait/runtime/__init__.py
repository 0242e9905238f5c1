"""Running the waitlist workers: processors registered per queue and job name (dispatch,
processors, plugins), the services they share, worker pools (runner) and several processes
under one supervisor."""
