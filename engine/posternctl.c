/* posternctl: sends one command to postern's stats socket and prints the
 * reply. Exit 0 when the command succeeded, 1 when postern answered with an
 * error or could not be reached, 2 on a usage error. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int usage(void)
{
	fprintf(stderr,
		"usage: posternctl -s SOCKET [--json] COMMAND... [--json]\n"
		"  commands: show info | show stat | show queue | show connectors | show metrics |\n"
		"            match <ip>[:<port>] | show throttle | flush | reload | drain | help\n"
		"  queue:    show queue [sender=S] [rcpt=R] [domain=D] [client=IP]\n"
		"                       [state=active|deferred|held] [limit=N] [offset=N]\n"
		"            show destinations [filters]\n"
		"            hold|release|delete|bounce|retry ID|all [filters]\n"
		"  track:    track [id=ID] [sender=S] [rcpt=R] [message_id=M] [since=TIME] [until=TIME] [limit=N]\n"
		"  --json    ask for JSON (show info, show stat, show queue, show destinations,\n"
		"            match, track, and the queue commands)\n"
		"  TIME      2026-12-02T13:54:19Z, 2026-12-02 13:54, 2026-12-02, or an age: 30s 15m 1h 2d 1w\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	int i = 1;
	if (i + 1 < argc && strcmp(argv[i], "-s") == 0) {
		path = argv[i + 1];
		i += 2;
	}
	bool json = false;
	if (i < argc && strcmp(argv[i], "--json") == 0) {
		json = true;
		i++;
	}
	if (argc > i && strcmp(argv[argc - 1], "--json") == 0) {
		json = true;
		argc--;
	}
	if (!path || i >= argc)
		return usage();
	char cmd[512] = "";
	for (; i < argc; i++) {
		size_t n = strlen(cmd);
		snprintf(cmd + n, sizeof(cmd) - n, "%s%s", n ? " " : "", argv[i]);
	}
	if (json) {
		size_t n = strlen(cmd);
		snprintf(cmd + n, sizeof(cmd) - n, " json");
	}
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "posternctl: socket path too long: %s\n", path);
		return 1;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		fprintf(stderr, "posternctl: cannot connect to %s: %s%s\n", path,
			strerror(errno),
			errno == ENOENT || errno == ECONNREFUSED ? " (is postern running with this stats_socket?)" : "");
		return 1;
	}
	size_t n = strlen(cmd);
	cmd[n++] = '\n';
	if (write(fd, cmd, n) != (ssize_t)n) {
		fprintf(stderr, "posternctl: write: %s\n", strerror(errno));
		return 1;
	}
	char buf[65536];
	ssize_t r;
	int status = 0;
	bool first = true;
	while ((r = read(fd, buf, sizeof(buf))) > 0) {
		if (first && r >= 6 && strncmp(buf, "error:", 6) == 0)
			status = 1;
		first = false;
		fwrite(buf, 1, (size_t)r, stdout);
	}
	if (r < 0) {
		fprintf(stderr, "posternctl: read: %s\n", strerror(errno));
		return 1;
	}
	if (first) {
		fprintf(stderr, "posternctl: postern closed the connection without a reply\n");
		return 1;
	}
	close(fd);
	return status;
}
