/*
 * main.c — mms-gateway's startup and stop. Signals are blocked in every
 * thread and taken here with sigwait: SIGTERM/SIGINT stop gracefully (no new
 * connections, requests in flight get --shutdown-timeout seconds, then
 * everything closes), SIGHUP reopens the access log.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway.h"

atomic_bool gw_stopping;

static void
wait_for_inflight(int timeout_s)
{
	int64_t		end = gw_now_ms() + (int64_t) timeout_s * 1000;

	while (atomic_load(&gw_inflight) > 0 && gw_now_ms() < end)
		usleep(20 * 1000);
	if (atomic_load(&gw_inflight) > 0)
		gw_log("%d requests still in flight after %d s: closing them", atomic_load(&gw_inflight), timeout_s);
}

int
main(int argc, char **argv)
{
	sigset_t	blocked;
	sigset_t	wanted;
	struct MHD_Daemon *daemon;
	int			r;
	int			sig = 0;

	/* before any thread exists, so that they all inherit the mask */
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGINT);
	sigaddset(&blocked, SIGTERM);
	sigaddset(&blocked, SIGHUP);
	sigaddset(&blocked, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &blocked, NULL);
	wanted = blocked;
	sigdelset(&wanted, SIGPIPE);

	r = gw_options_parse(argc, argv, &gw_config);
	if (r != 0)
		return r > 0 ? 0 : 2;
	if (!gw_access_log_open(gw_config.access_log))
	{
		gw_log("cannot open the access log %s", gw_config.access_log);
		return 1;
	}
	gw_auth_init();
	if (!gw_pool_init())
		return 1;
	gw_health_start();
	gw_health_wait_first(5000);
	if (gw_health_n_healthy() == 0)
		gw_log("no node is healthy yet; /readyz answers 503 until one is");

	daemon = gw_http_start();
	if (daemon == NULL)
	{
		gw_health_stop();
		gw_pool_close();
		return 1;
	}

	for (;;)
	{
		if (sigwait(&wanted, &sig) != 0)
			continue;
		if (sig == SIGHUP)
		{
			gw_access_log_reopen();
			continue;
		}
		break;
	}

	gw_log("%s: stopping (no new connections; %d requests in flight)", strsignal(sig), atomic_load(&gw_inflight));
	atomic_store(&gw_stopping, true);
	{
		MHD_socket	listen_fd = MHD_quiesce_daemon(daemon);

		if (listen_fd != MHD_INVALID_SOCKET)
			close(listen_fd);
	}
	wait_for_inflight(gw_config.shutdown_timeout_s);
	MHD_stop_daemon(daemon);
	gw_health_stop();
	gw_pool_close();
	gw_log("stopped");
	return 0;
}
