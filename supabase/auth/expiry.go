package auth

import (
	"math"
	"time"
)

// secondsLeft is the expiry gauge's value: +Inf for a token without exp.
func secondsLeft(exp time.Time, ok bool) float64 {
	if !ok {
		return math.Inf(1)
	}
	return time.Until(exp).Seconds()
}
