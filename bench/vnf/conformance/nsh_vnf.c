/*
 * A stateful NSH-aware VNF written the way people write them in C, in one of
 * several styles (the first argument after the state file), for NHAM's VNF
 * conformance suite. Nothing here is tuned for NHAM.
 *
 *   small    a 64 KiB receive buffer (SO_RCVBUF), bound to the NSH EtherType
 *   slow     0.5 ms of work per frame, Linux's default buffer: its queue fills
 *   batch    recvmmsg(2) up to 32 frames at a time, then sleeps 2 ms
 *   threads  a reader thread hands frames, in order, to a writer thread
 *   enetdown exits when its link goes down (send or receive fails with
 *            ENETDOWN), as many programs do
 *   ring     reads through a TPACKET_V3 mmap ring (32 blocks of 64 KiB,
 *            10 ms block timeout), bound to ETH_P_ALL, as libpcap-style
 *            capture code does; sends with send(2)
 *
 * Each counts the NSH frames it serves, their inner frames' bytes and a
 * running CRC-32 (zlib's) of those inner frames in order: its state, which
 * SIGUSR1 writes as JSON to the state file (a temporary file renamed into
 * place). It sends every frame back with the MAC addresses swapped and the
 * Service Index decremented by one (RFC 8300, section 2.3: "Service Index
 * (SI): ... It is decremented by Service Functions"). It prints "ready"
 * once its socket is open.
 *
 * Build: cc -O2 -pthread -o nsh_vnf nsh_vnf.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <sys/mman.h>
#include <net/if.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETH_P_NSH 0x894F
#define ETH_P_ALL_ 0x0003
#define MAXF 2048

static const char *state_path;
static volatile sig_atomic_t dump_requested;
static uint64_t packets, bytes;
static uint32_t crc = 0;
static int fd;
static int exit_on_enetdown;
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;

static uint32_t crc32_update(uint32_t c, const unsigned char *p, size_t n)
{
	c = ~c;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & -(c & 1));
	}
	return ~c;
}

static void on_usr1(int sig) { (void)sig; dump_requested = 1; }

static void dump_state(void)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", state_path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	pthread_mutex_lock(&state_lock);
	fprintf(f, "{\"packets\": %llu, \"bytes\": %llu, \"crc\": %u}\n",
		(unsigned long long)packets, (unsigned long long)bytes, crc);
	pthread_mutex_unlock(&state_lock);
	fclose(f);
	rename(tmp, state_path);
}

static void fail(const char *what)
{
	if (exit_on_enetdown && errno == ENETDOWN) {
		fprintf(stderr, "nsh_vnf: %s: link down, exiting\n", what);
		exit(1);
	}
	if (errno != EINTR)
		fprintf(stderr, "nsh_vnf: %s: %s\n", what, strerror(errno));
}

/* Serves one frame: updates the state, sends the answer. */
static void serve(unsigned char *frame, ssize_t len)
{
	if (len < 14 + 8 || frame[12] != 0x89 || frame[13] != 0x4F)
		return;
	unsigned char si = frame[14 + 7];
	if (si == 0)
		return;
	/* NSH Length: low 6 bits of the base header's second byte, in 4-byte
	 * words; what follows is the inner frame. */
	size_t nsh_len = 4 * (frame[15] & 0x3F);
	if ((size_t)len < 14 + nsh_len)
		return;
	pthread_mutex_lock(&state_lock);
	packets++;
	bytes += len - 14 - nsh_len;
	crc = crc32_update(crc, frame + 14 + nsh_len, len - 14 - nsh_len);
	pthread_mutex_unlock(&state_lock);
	unsigned char mac[6];
	memcpy(mac, frame, 6);
	memcpy(frame, frame + 6, 6);
	memcpy(frame + 6, mac, 6);
	frame[14 + 7] = si - 1;
	while (send(fd, frame, len, 0) < 0) {
		fail("send");
		if (errno != EINTR && errno != ENOBUFS)
			break;
	}
}

static int incoming(const struct sockaddr_ll *from)
{
	return from->sll_pkttype != PACKET_OUTGOING;
}

static void loop_plain(int slow)
{
	unsigned char frame[MAXF];
	for (;;) {
		if (dump_requested) {
			dump_requested = 0;
			dump_state();
		}
		struct sockaddr_ll from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(fd, frame, sizeof frame, 0, (struct sockaddr *)&from, &fl);
		if (n < 0) {
			fail("recvfrom");
			continue;
		}
		if (!incoming(&from))
			continue;
		if (slow) {
			struct timespec t = {0, 500 * 1000};
			nanosleep(&t, NULL);
		}
		serve(frame, n);
	}
}

static void loop_batch(void)
{
	enum { B = 32 };
	static unsigned char frames[B][MAXF];
	struct mmsghdr msgs[B];
	struct iovec iov[B];
	struct sockaddr_ll from[B];
	for (;;) {
		if (dump_requested) {
			dump_requested = 0;
			dump_state();
		}
		for (int i = 0; i < B; i++) {
			iov[i].iov_base = frames[i];
			iov[i].iov_len = MAXF;
			memset(&msgs[i], 0, sizeof msgs[i]);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof from[i];
		}
		int n = recvmmsg(fd, msgs, B, MSG_WAITFORONE, NULL);
		if (n < 0) {
			fail("recvmmsg");
			continue;
		}
		for (int i = 0; i < n; i++)
			if (incoming(&from[i]))
				serve(frames[i], msgs[i].msg_len);
		struct timespec t = {0, 2 * 1000 * 1000};
		nanosleep(&t, NULL);
	}
}

/* threads: a bounded queue between a reader and a writer. */
enum { Q = 256 };
static unsigned char qframes[Q][MAXF];
static ssize_t qlen[Q];
static unsigned qhead, qtail;
static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qcond = PTHREAD_COND_INITIALIZER;

static void *writer(void *arg)
{
	(void)arg;
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	static unsigned char frame[MAXF];
	for (;;) {
		pthread_mutex_lock(&qlock);
		while (qhead == qtail && !dump_requested)
			pthread_cond_wait(&qcond, &qlock);
		int have = qhead != qtail;
		ssize_t n = 0;
		if (have) {
			n = qlen[qhead % Q];
			memcpy(frame, qframes[qhead % Q], n);
			qhead++;
			pthread_cond_broadcast(&qcond);
		}
		pthread_mutex_unlock(&qlock);
		if (have)
			serve(frame, n);
		if (dump_requested) {
			/* Everything read before the request is served first. */
			pthread_mutex_lock(&qlock);
			int empty = qhead == qtail;
			pthread_mutex_unlock(&qlock);
			if (empty) {
				dump_requested = 0;
				dump_state();
			}
		}
	}
	return NULL;
}

static void loop_threads(void)
{
	pthread_t w;
	pthread_create(&w, NULL, writer, NULL);
	unsigned char frame[MAXF];
	for (;;) {
		struct sockaddr_ll from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(fd, frame, sizeof frame, 0, (struct sockaddr *)&from, &fl);
		if (n < 0) {
			fail("recvfrom");
			pthread_mutex_lock(&qlock);
			pthread_cond_broadcast(&qcond);
			pthread_mutex_unlock(&qlock);
			continue;
		}
		if (!incoming(&from))
			continue;
		pthread_mutex_lock(&qlock);
		while (qtail - qhead == Q)
			pthread_cond_wait(&qcond, &qlock);
		memcpy(qframes[qtail % Q], frame, n);
		qlen[qtail % Q] = n;
		qtail++;
		pthread_cond_broadcast(&qcond);
		pthread_mutex_unlock(&qlock);
	}
}

/* ring: the TPACKET_V3 receive loop of the kernel's packet_mmap.rst, one
 * block at a time, in order, each handed back to the kernel once served. */
enum { RING_BLOCK = 64 * 1024, RING_BLOCKS = 32, RING_FRAME = 2048 };

static unsigned char *ring_setup(void)
{
	int v = TPACKET_V3;
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0) {
		perror("PACKET_VERSION");
		exit(1);
	}
	struct tpacket_req3 req = {0};
	req.tp_block_size = RING_BLOCK;
	req.tp_block_nr = RING_BLOCKS;
	req.tp_frame_size = RING_FRAME;
	req.tp_frame_nr = RING_BLOCK / RING_FRAME * RING_BLOCKS;
	req.tp_retire_blk_tov = 10;
	if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
		perror("PACKET_RX_RING");
		exit(1);
	}
	unsigned char *map = mmap(NULL, (size_t)RING_BLOCK * RING_BLOCKS, PROT_READ | PROT_WRITE,
				  MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return map;
}

static void loop_ring(unsigned char *map)
{
	unsigned block = 0;
	for (;;) {
		if (dump_requested) {
			dump_requested = 0;
			dump_state();
		}
		struct tpacket_block_desc *bd = (void *)(map + (size_t)block * RING_BLOCK);
		if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
			struct pollfd p = {.fd = fd, .events = POLLIN | POLLERR};
			if (poll(&p, 1, -1) < 0)
				fail("poll");
			continue;
		}
		struct tpacket3_hdr *h = (void *)((unsigned char *)bd + bd->hdr.bh1.offset_to_first_pkt);
		for (unsigned i = 0; i < bd->hdr.bh1.num_pkts; i++) {
			const struct sockaddr_ll *from =
				(void *)((unsigned char *)h + TPACKET_ALIGN(sizeof *h));
			if (incoming(from)) {
				unsigned char frame[MAXF];
				size_t n = h->tp_snaplen < MAXF ? h->tp_snaplen : MAXF;
				memcpy(frame, (unsigned char *)h + h->tp_mac, n);
				serve(frame, n);
			}
			h = (void *)((unsigned char *)h + h->tp_next_offset);
		}
		__atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
		block = (block + 1) % RING_BLOCKS;
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: nsh_vnf STATE-FILE small|slow|batch|threads|enetdown|ring\n");
		return 2;
	}
	state_path = argv[1];
	const char *style = argv[2];
	const char *iface = getenv("NHAM_IFACE");
	if (!iface)
		iface = "eth0";
	int proto = strcmp(style, "small") == 0 ? ETH_P_NSH : ETH_P_ALL_;
	fd = socket(AF_PACKET, SOCK_RAW, htons(proto));
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	if (strcmp(style, "small") == 0) {
		int size = 64 * 1024;
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	}
	unsigned char *map = strcmp(style, "ring") == 0 ? ring_setup() : NULL;
	struct sockaddr_ll addr = {0};
	addr.sll_family = AF_PACKET;
	addr.sll_protocol = htons(proto);
	addr.sll_ifindex = if_nametoindex(iface);
	if (addr.sll_ifindex == 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		perror(iface);
		return 1;
	}
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1; /* no SA_RESTART: a blocking read returns EINTR */
	sigaction(SIGUSR1, &sa, NULL);
	exit_on_enetdown = strcmp(style, "enetdown") == 0;
	printf("ready\n");
	fflush(stdout);
	if (strcmp(style, "batch") == 0)
		loop_batch();
	else if (strcmp(style, "threads") == 0)
		loop_threads();
	else if (strcmp(style, "small") == 0 || strcmp(style, "enetdown") == 0)
		loop_plain(0);
	else if (strcmp(style, "slow") == 0)
		loop_plain(1);
	else if (map)
		loop_ring(map);
	else {
		fprintf(stderr, "nsh_vnf: unknown style %s\n", style);
		return 2;
	}
	return 0;
}
