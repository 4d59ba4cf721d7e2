package health

import "testing"

func TestRegistryBuildInfo(t *testing.T) {
	mfs, err := NewRegistry("v1.2.3").Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "waylume_build_info" {
			continue
		}
		m := mf.GetMetric()[0]
		if l := m.GetLabel()[0]; l.GetName() != "version" || l.GetValue() != "v1.2.3" || m.GetGauge().GetValue() != 1 {
			t.Errorf("build info %v", m)
		}
		return
	}
	t.Error("no waylume_build_info")
}
