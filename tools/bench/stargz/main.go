// Command stargz-grpc serves stargz-snapshotter's snapshotter to containerd over a unix
// socket (a [proxy_plugins] snapshotter), for fusesnap's benchmarks. Debian packages the
// snapshotter's library but not its daemon; tools/bench/stargz.py builds this from them.
//
//	stargz-grpc -address SOCK -root DIR [-log-level info]
//
// The registry is reached as the snapshot labels say (ctr-remote's rpull sets them),
// over plain HTTP for localhost and loopback hosts, with no credentials. On SIGINT or
// SIGTERM it stops serving and closes the snapshotter, which unmounts its layers.
package main

import (
	"context"
	"flag"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve the snapshots API on")
	root := flag.String("root", "", "the snapshotter's directory: metadata, caches, mounts")
	level := flag.String("log-level", "info", "trace, debug, info, warn or error")
	flag.Parse()
	if *address == "" || *root == "" {
		log.L.Fatal("-address and -root are required")
	}
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		log.L.WithError(err).Fatal("bad -log-level")
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)

	// An empty config: the library's defaults, as stargz-snapshotter's own daemon runs
	// without a config file.
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &service.Config{})
	if err != nil {
		log.L.WithError(err).Fatal("cannot start the snapshotter")
	}
	if err := os.RemoveAll(*address); err != nil {
		log.L.WithError(err).Fatal("cannot remove a stale socket")
	}
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.L.WithError(err).Fatal("cannot listen")
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	go func() {
		if err := server.Serve(listener); err != nil {
			log.L.WithError(err).Fatal("serving stopped")
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	log.L.Infof("serving stargz-snapshotter on %s, root %s", *address, *root)
	<-stop
	server.Stop()
	if err := sn.Close(); err != nil {
		log.L.WithError(err).Error("closing the snapshotter")
	}
}
