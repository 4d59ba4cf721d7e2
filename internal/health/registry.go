package health

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry is the node's own registry (never the global one) with the
// process, Go and build-info series; version labels the build.
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "waylume_build_info",
		Help: "Always 1; the version label says which build runs.",
	}, []string{"version"})
	bi.WithLabelValues(version).Set(1)
	reg.MustRegister(bi)
	return reg
}
