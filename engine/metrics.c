/* Counters and their presentation (see metrics.h). */
#include "metrics.h"

#include <string.h>

#include "log.h"

const uint64_t latency_bounds_us[LATENCY_BUCKETS] = {
	250, 500, 1000, 2000, 5000, 10000, 25000, 50000, 100000, 250000,
	500000, 1000000, 2500000, 5000000,
};

const char *const throttle_reason_names[THROTTLE_REASONS] = {
	[THROTTLE_MESSAGE_RATE] = "message_rate",
	[THROTTLE_CONNECTIONS] = "max_inbound_connection",
	[THROTTLE_CONNECTIONS_PER_SOURCE] = "max_inbound_connection_per_source",
	[THROTTLE_CONNECTIONS_PERCENTAGE] = "max_inbound_connection_percentage_per_source",
	[THROTTLE_TABLE_FULL] = "table_full",
};

const char *const refuse_names[REFUSE_COUNT] = {
	[REFUSE_NO_CONNECTOR] = "no_connector",
	[REFUSE_WORKER_FULL] = "connection_limit",
	[REFUSE_SHUTDOWN] = "shutting_down",
	[REFUSE_DESCRIPTORS] = "out_of_descriptors",
};

void metric_latency(struct latency_hist *h, uint64_t us)
{
	unsigned i = 0;
	while (i < LATENCY_BUCKETS && us > latency_bounds_us[i])
		i++;
	metric_add(&h->bucket[i], 1);
	metric_add(&h->count, 1);
	metric_add(&h->sum_us, us);
}

unsigned metrics_registry_id(struct metrics_registry *r, const char *name)
{
	unsigned n = atomic_load_explicit(&r->n, memory_order_acquire);
	for (unsigned i = 0; i < n; i++)
		if (strcmp(r->names[i], name) == 0)
			return i;
	if (n == METRIC_CONNECTORS_MAX)
		return METRIC_CONNECTORS_MAX - 1;
	snprintf(r->names[n], METRIC_NAME_MAX, "%s", name);
	atomic_store_explicit(&r->n, n + 1, memory_order_release);
	return n;
}

static uint64_t rejected_sum(struct connector_counters *cc)
{
	uint64_t s = 0;
	for (int k = 0; k < SMTP_REJECT_COUNT; k++)
		s += metric_get(&cc->rejected[k]);
	return s;
}

void metrics_totals(struct worker_metrics **w, unsigned nw, struct metrics_totals *t)
{
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; i < nw; i++) {
		struct worker_metrics *m = w[i];
		for (unsigned c = 0; c < METRIC_CONNECTORS_MAX; c++) {
			struct connector_counters *cc = &m->conn[c];
			t->connections += metric_get(&cc->connections);
			t->active += metric_get(&cc->active);
			t->messages += metric_get(&cc->messages);
			t->bytes += metric_get(&cc->bytes);
			t->rejected += rejected_sum(cc);
		}
		for (int r = 0; r < REFUSE_COUNT; r++)
			t->refused[r] += metric_get(&m->refused[r]);
		t->proxy_rejected += metric_get(&m->proxy_rejected);
		t->fsyncs += metric_get(&m->fsyncs);
		t->dirsyncs += metric_get(&m->dirsyncs);
		t->flushed_messages += metric_get(&m->flushed_messages);
	}
}

const char *const auth_result_names[AUTH_RESULTS] = {"ok", "failed", "temporary"};

const char *const tls_out_names[TLS_OUT_RESULTS] = {"ok", "not_offered", "failed",
							   "untrusted", "name_mismatch"};

struct connector_sum {
	uint64_t connections, active, messages, bytes, tls_ok, tls_failed;
	uint64_t rejected[SMTP_REJECT_COUNT];
};

static void connector_sum(struct worker_metrics **w, unsigned nw, unsigned id,
			  struct connector_sum *s)
{
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < nw; i++) {
		struct connector_counters *cc = &w[i]->conn[id];
		s->connections += metric_get(&cc->connections);
		s->active += metric_get(&cc->active);
		s->messages += metric_get(&cc->messages);
		s->bytes += metric_get(&cc->bytes);
		s->tls_ok += metric_get(&cc->tls_ok);
		s->tls_failed += metric_get(&cc->tls_failed);
		for (int k = 0; k < SMTP_REJECT_COUNT; k++)
			s->rejected[k] += metric_get(&cc->rejected[k]);
	}
}

static void send_sum(struct worker_metrics **w, unsigned nw, unsigned id, uint64_t v[5])
{
	memset(v, 0, 5 * sizeof(*v));
	for (unsigned i = 0; i < nw; i++) {
		struct send_counters *sc = &w[i]->send[id];
		v[0] += metric_get(&sc->delivered);
		v[1] += metric_get(&sc->deferred);
		v[2] += metric_get(&sc->bounced);
		v[3] += metric_get(&sc->throttled);
		v[4] += metric_get(&sc->connections);
	}
}

static void send_tls_sum(struct worker_metrics **w, unsigned nw, unsigned id,
			 uint64_t t[TLS_OUT_RESULTS])
{
	memset(t, 0, TLS_OUT_RESULTS * sizeof(*t));
	for (unsigned i = 0; i < nw; i++)
		for (int k = 0; k < TLS_OUT_RESULTS; k++)
			t[k] += metric_get(&w[i]->send[id].tls[k]);
}

static uint64_t rule_hits(struct worker_metrics **w, unsigned nw, unsigned id, unsigned a)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < nw; i++)
		v += metric_get(&w[i]->rule_hits[id][a]);
	return v;
}

static void print_rules_stat(FILE *out, const struct metrics_rules *rules,
			     struct worker_metrics **w, unsigned nw, bool json)
{
	unsigned n = rules ? atomic_load_explicit(&rules->reg->n, memory_order_acquire) : 0;
	if (json)
		fputs(", \"content_rules\": [", out);
	else
		fprintf(out, "\n%-32s %-12s %12s\n", "content rule", "action", "hits");
	for (unsigned id = 0; id < n; id++) {
		int act = rules->action[id];
		uint64_t total = 0;
		for (unsigned a = 0; a < CONTENT_ACTION_COUNT; a++)
			total += rule_hits(w, nw, id, a);
		if (!json) {
			fprintf(out, "%-32.32s %-12s %12llu\n", rules->reg->names[id],
				act >= 0 ? content_action_names[act] : "-", (unsigned long long)total);
			continue;
		}
		fputs(id ? ", {\"name\": " : "{\"name\": ", out);
		json_write_string(out, rules->reg->names[id]);
		if (act >= 0)
			fprintf(out, ", \"action\": \"%s\"", content_action_names[act]);
		else
			fputs(", \"action\": null", out);
		fprintf(out, ", \"hits\": %llu, \"by_action\": {", (unsigned long long)total);
		for (unsigned a = 0; a < CONTENT_ACTION_COUNT; a++)
			fprintf(out, "%s\"%s\": %llu", a ? ", " : "", content_action_names[a],
				(unsigned long long)rule_hits(w, nw, id, a));
		fputs("}}", out);
	}
	if (json)
		fputs("]", out);
}

void metrics_print_stat(FILE *out, struct metrics_registry *r, struct metrics_registry *sr,
			struct worker_metrics **w, unsigned nw, bool json,
			const struct metrics_rules *rules)
{
	unsigned n = atomic_load_explicit(&r->n, memory_order_acquire);
	if (json)
		fputs("{\"receive_connectors\": [", out);
	else
		fprintf(out, "%-32s %12s %8s %12s %14s %10s %10s %9s\n", "receive connector",
			"connections", "active", "messages", "bytes", "rejected", "tls", "tls_share");
	for (unsigned id = 0; id < n; id++) {
		struct connector_sum s;
		connector_sum(w, nw, id, &s);
		uint64_t rej = 0;
		for (int k = 0; k < SMTP_REJECT_COUNT; k++)
			rej += s.rejected[k];
		/* The share of connections that completed STARTTLS. */
		unsigned share = s.connections ? (unsigned)(s.tls_ok * 100 / s.connections) : 0;
		if (!json) {
			fprintf(out, "%-32.32s %12llu %8llu %12llu %14llu %10llu %10llu %8u%%\n",
				r->names[id], (unsigned long long)s.connections,
				(unsigned long long)s.active, (unsigned long long)s.messages,
				(unsigned long long)s.bytes, (unsigned long long)rej,
				(unsigned long long)s.tls_ok, share);
			continue;
		}
		fputs(id ? ", {\"name\": " : "{\"name\": ", out);
		json_write_string(out, r->names[id]);
		fprintf(out,
			", \"connections\": %llu, \"active\": %llu, \"messages\": %llu, \"bytes\": %llu, "
			"\"tls\": %llu, \"tls_failed\": %llu, \"tls_share\": %u, \"rejected\": {",
			(unsigned long long)s.connections, (unsigned long long)s.active,
			(unsigned long long)s.messages, (unsigned long long)s.bytes,
			(unsigned long long)s.tls_ok, (unsigned long long)s.tls_failed, share);
		for (int k = 0; k < SMTP_REJECT_COUNT; k++)
			fprintf(out, "%s\"%s\": %llu", k ? ", " : "",
				smtp_reject_name((enum smtp_reject)k),
				(unsigned long long)s.rejected[k]);
		fputs("}}", out);
	}
	unsigned ns = atomic_load_explicit(&sr->n, memory_order_acquire);
	if (json)
		fputs("], \"send_connectors\": [", out);
	else
		fprintf(out, "\n%-32s %12s %12s %12s %12s %12s %12s\n", "send connector",
			"delivered", "deferred", "bounced", "throttled", "connections", "tls");
	for (unsigned id = 0; id < ns; id++) {
		uint64_t v[5], t[TLS_OUT_RESULTS];
		send_sum(w, nw, id, v);
		send_tls_sum(w, nw, id, t);
		if (json) {
			fputs(id ? ", {\"name\": " : "{\"name\": ", out);
			json_write_string(out, sr->names[id]);
			fprintf(out, ", \"delivered\": %llu, \"deferred\": %llu, \"bounced\": %llu, "
				"\"throttled\": %llu, \"connections\": %llu, \"tls\": {",
				(unsigned long long)v[0], (unsigned long long)v[1],
				(unsigned long long)v[2], (unsigned long long)v[3],
				(unsigned long long)v[4]);
			for (int k = 0; k < TLS_OUT_RESULTS; k++)
				fprintf(out, "%s\"%s\": %llu", k ? ", " : "", tls_out_names[k],
					(unsigned long long)t[k]);
			fputs("}}", out);
		} else {
			fprintf(out, "%-32.32s %12llu %12llu %12llu %12llu %12llu %12llu\n",
				sr->names[id], (unsigned long long)v[0], (unsigned long long)v[1],
				(unsigned long long)v[2], (unsigned long long)v[3],
				(unsigned long long)v[4], (unsigned long long)t[TLS_OUT_OK]);
		}
	}
	if (json)
		fputs("]", out);
	print_rules_stat(out, rules, w, nw, json);
	if (json)
		fputs("}\n", out);
}

/* Label values escape backslash, double quote and newline. */
static void label(FILE *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(out, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", out);
		else
			fputc(*s, out);
	}
}

static void family(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void per_connector(FILE *out, struct metrics_registry *r, struct worker_metrics **w,
			  unsigned nw, unsigned n, const char *name, int which)
{
	for (unsigned id = 0; id < n; id++) {
		struct connector_sum s;
		connector_sum(w, nw, id, &s);
		uint64_t v = which == 0 ? s.connections : which == 1 ? s.active : s.messages;
		fprintf(out, "%s{connector=\"", name);
		label(out, r->names[id]);
		fprintf(out, "\"} %llu\n", (unsigned long long)v);
	}
}

static void per_send(FILE *out, struct metrics_registry *sr, struct worker_metrics **w,
		     unsigned nw, const char *name, int which)
{
	unsigned ns = atomic_load_explicit(&sr->n, memory_order_acquire);
	for (unsigned id = 0; id < ns; id++) {
		uint64_t v[5];
		send_sum(w, nw, id, v);
		fprintf(out, "%s{send_connector=\"", name);
		label(out, sr->names[id]);
		fprintf(out, "\"} %llu\n", (unsigned long long)v[which]);
	}
}

/* One counter per connector and result, summed over workers. */
typedef uint64_t (*result_getter)(struct worker_metrics *m, unsigned id, int k);

static uint64_t get_tls_in(struct worker_metrics *m, unsigned id, int k)
{
	return metric_get(k ? &m->conn[id].tls_failed : &m->conn[id].tls_ok);
}

static uint64_t get_tls_out(struct worker_metrics *m, unsigned id, int k)
{
	return metric_get(&m->send[id].tls[k]);
}

static uint64_t get_auth_in(struct worker_metrics *m, unsigned id, int k)
{
	return metric_get(&m->conn[id].auth[k]);
}

static uint64_t get_auth_out(struct worker_metrics *m, unsigned id, int k)
{
	return metric_get(&m->send[id].auth[k]);
}

static void per_result(FILE *out, const char *name, const char *key, struct metrics_registry *reg,
		       struct worker_metrics **w, unsigned nw, const char *const *results,
		       int nres, result_getter get)
{
	unsigned n = atomic_load_explicit(&reg->n, memory_order_acquire);
	for (unsigned id = 0; id < n; id++)
		for (int k = 0; k < nres; k++) {
			uint64_t v = 0;
			for (unsigned i = 0; i < nw; i++)
				v += get(w[i], id, k);
			fprintf(out, "%s{%s=\"", name, key);
			label(out, reg->names[id]);
			fprintf(out, "\",result=\"%s\"} %llu\n", results[k], (unsigned long long)v);
		}
}

void metrics_print_prometheus(FILE *out, struct metrics_registry *r,
			      struct metrics_registry *sr, struct worker_metrics **w, unsigned nw,
			      const struct spool_usage *spool, const char *io_backend,
			      const struct metrics_rules *rules)
{
	unsigned n = atomic_load_explicit(&r->n, memory_order_acquire);
	family(out, "postern_connections_total", "counter",
	       "Connections accepted, by receive connector.");
	per_connector(out, r, w, nw, n, "postern_connections_total", 0);
	family(out, "postern_connections_active", "gauge",
	       "Connections open now, by receive connector.");
	per_connector(out, r, w, nw, n, "postern_connections_active", 1);
	family(out, "postern_connections_refused_total", "counter",
	       "Connections refused before any connector took them, by reason.");
	struct metrics_totals t;
	metrics_totals(w, nw, &t);
	for (int k = 0; k < REFUSE_COUNT; k++)
		fprintf(out, "postern_connections_refused_total{reason=\"%s\"} %llu\n",
			refuse_names[k], (unsigned long long)t.refused[k]);
	family(out, "postern_messages_received_total", "counter",
	       "Messages accepted and stored durably, by receive connector.");
	per_connector(out, r, w, nw, n, "postern_messages_received_total", 2);
	family(out, "postern_messages_rejected_total", "counter",
	       "Commands and messages refused, by receive connector and reason.");
	for (unsigned id = 0; id < n; id++) {
		struct connector_sum s;
		connector_sum(w, nw, id, &s);
		for (int k = 0; k < SMTP_REJECT_COUNT; k++) {
			fputs("postern_messages_rejected_total{connector=\"", out);
			label(out, r->names[id]);
			fprintf(out, "\",reason=\"%s\"} %llu\n",
				smtp_reject_name((enum smtp_reject)k),
				(unsigned long long)s.rejected[k]);
		}
	}
	/* Before any connector: connector="" (B.10). */
	fprintf(out, "postern_messages_rejected_total{connector=\"\",reason=\"proxy\"} %llu\n",
		(unsigned long long)t.proxy_rejected);
	family(out, "postern_pickup_files_total", "counter",
	       "Pickup directory files: spooled and deleted (accepted) or renamed *.bad (bad).");
	uint64_t pa = 0, pb = 0;
	for (unsigned i = 0; i < nw; i++) {
		pa += metric_get(&w[i]->pickup_accepted);
		pb += metric_get(&w[i]->pickup_bad);
	}
	fprintf(out, "postern_pickup_files_total{result=\"accepted\"} %llu\n", (unsigned long long)pa);
	fprintf(out, "postern_pickup_files_total{result=\"bad\"} %llu\n", (unsigned long long)pb);
	family(out, "postern_throttled_total", "counter",
	       "Throttle events, by connector (receive or send) and reason.");
	for (unsigned id = 0; id < n; id++)
		for (int k = 0; k < THROTTLE_REASONS; k++) {
			uint64_t v = 0;
			for (unsigned i = 0; i < nw; i++)
				v += metric_get(&w[i]->conn[id].throttled[k]);
			fputs("postern_throttled_total{connector=\"", out);
			label(out, r->names[id]);
			fprintf(out, "\",reason=\"%s\"} %llu\n", throttle_reason_names[k],
				(unsigned long long)v);
		}
	unsigned ns = atomic_load_explicit(&sr->n, memory_order_acquire);
	for (unsigned id = 0; id < ns; id++) {
		uint64_t v[5];
		send_sum(w, nw, id, v);
		fputs("postern_throttled_total{connector=\"", out);
		label(out, sr->names[id]);
		fprintf(out, "\",reason=\"send_message_rate\"} %llu\n", (unsigned long long)v[3]);
		uint64_t full = 0;
		for (unsigned i = 0; i < nw; i++)
			full += metric_get(&w[i]->send[id].table_full);
		fputs("postern_throttled_total{connector=\"", out);
		label(out, sr->names[id]);
		fprintf(out, "\",reason=\"table_full\"} %llu\n", (unsigned long long)full);
	}
	family(out, "postern_messages_delivered_total", "counter",
	       "Recipients delivered (next hop took them), by send connector.");
	per_send(out, sr, w, nw, "postern_messages_delivered_total", 0);
	family(out, "postern_messages_deferred_total", "counter",
	       "Recipients deferred (temporary failure, retried later), by send connector.");
	per_send(out, sr, w, nw, "postern_messages_deferred_total", 1);
	family(out, "postern_messages_bounced_total", "counter",
	       "Recipients failed permanently (a DSN goes to the sender), by send connector.");
	per_send(out, sr, w, nw, "postern_messages_bounced_total", 2);
	family(out, "postern_delivery_connections_total", "counter",
	       "Outbound SMTP connections established, by send connector.");
	per_send(out, sr, w, nw, "postern_delivery_connections_total", 4);
	family(out, "postern_tls_handshakes_total", "counter",
	       "Inbound STARTTLS handshakes, by receive connector and result (ok, failed).");
	static const char *const tls_in_names[] = {"ok", "failed"};
	per_result(out, "postern_tls_handshakes_total", "connector", r, w, nw, tls_in_names, 2,
		   get_tls_in);
	family(out, "postern_tls_outbound_total", "counter",
	       "Outbound sessions by TLS outcome: ok, not_offered (no STARTTLS), failed (handshake), untrusted, name_mismatch.");
	per_result(out, "postern_tls_outbound_total", "send_connector", sr, w, nw, tls_out_names,
		   TLS_OUT_RESULTS, get_tls_out);
	family(out, "postern_auth_total", "counter",
	       "Inbound SMTP AUTH attempts, by receive connector and result (ok, failed, temporary).");
	per_result(out, "postern_auth_total", "connector", r, w, nw, auth_result_names,
		   AUTH_RESULTS, get_auth_in);
	family(out, "postern_auth_outbound_total", "counter",
	       "SMTP AUTH to the next hop, by send connector and result (ok, failed: refused credentials, temporary).");
	per_result(out, "postern_auth_outbound_total", "send_connector", sr, w, nw,
		   auth_result_names, AUTH_RESULTS, get_auth_out);
	family(out, "postern_content_rule_hits_total", "counter",
	       "Messages a content rule matched, by rule and action (every hit, whichever action won).");
	unsigned nr = rules ? atomic_load_explicit(&rules->reg->n, memory_order_acquire) : 0;
	for (unsigned id = 0; id < nr; id++)
		for (unsigned a = 0; a < CONTENT_ACTION_COUNT; a++) {
			uint64_t v = rule_hits(w, nw, id, a);
			/* The rule's action in force always has a series. */
			if (!v && rules->action[id] != (int)a)
				continue;
			fputs("postern_content_rule_hits_total{rule=\"", out);
			label(out, rules->reg->names[id]);
			fprintf(out, "\",action=\"%s\"} %llu\n", content_action_names[a],
				(unsigned long long)v);
		}
	family(out, "postern_io_backend_info", "gauge",
	       "The I/O backend the workers run on (io_uring, or epoll where io_uring is blocked).");
	fprintf(out, "postern_io_backend_info{backend=\"%s\"} 1\n", io_backend);
	family(out, "postern_queue_messages", "gauge", "Messages in the queue.");
	fprintf(out, "postern_queue_messages %ld\n", spool->messages);
	family(out, "postern_spool_bytes", "gauge",
	       "Bytes of queued messages in the spool (as stored, envelopes not counted).");
	fprintf(out, "postern_spool_bytes %llu\n", (unsigned long long)spool->bytes);
	family(out, "postern_spool_free_bytes", "gauge",
	       "Bytes available on the spool's file system.");
	fprintf(out, "postern_spool_free_bytes %llu\n", (unsigned long long)spool->free_bytes);
	family(out, "postern_ready", "gauge",
	       "1 while accepting with a writable spool (GET /readyz answers 200), else 0.");
	fprintf(out, "postern_ready %d\n", spool->ready ? 1 : 0);
	family(out, "postern_accept_latency_seconds", "histogram",
	       "Time from the end of DATA to the 250 reply (message on stable storage).");
	uint64_t cum = 0, count = 0, sum = 0;
	for (unsigned b = 0; b <= LATENCY_BUCKETS; b++) {
		uint64_t v = 0;
		for (unsigned i = 0; i < nw; i++)
			v += metric_get(&w[i]->latency.bucket[b]);
		cum += v;
		if (b < LATENCY_BUCKETS)
			fprintf(out, "postern_accept_latency_seconds_bucket{le=\"%g\"} %llu\n",
				(double)latency_bounds_us[b] / 1e6, (unsigned long long)cum);
		else
			fprintf(out, "postern_accept_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
				(unsigned long long)cum);
	}
	/* _count must equal the +Inf bucket even while workers add to both. */
	count = cum;
	for (unsigned i = 0; i < nw; i++)
		sum += metric_get(&w[i]->latency.sum_us);
	fprintf(out, "postern_accept_latency_seconds_sum %.6f\n", (double)sum / 1e6);
	fprintf(out, "postern_accept_latency_seconds_count %llu\n", (unsigned long long)count);
}
