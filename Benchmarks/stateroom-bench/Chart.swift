import Foundation

/// An SVG of latency percentile curves (HdrHistogram style): x is the percentile on a
/// log(1/(1-p)) scale, y the latency on a log scale. One line per run.
enum Chart {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]

    static func svg(title: String, series: [(name: String, curve: [[Double]])]) -> String {
        let width = 900.0, height = 520.0
        let left = 80.0, right = 260.0, top = 50.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let maxX = 5.0 // up to 99.999%
        func xOf(_ p: Double) -> Double {
            let v = min(maxX, log10(1 / max(1e-9, 1 - min(p, 99.9999) / 100)))
            return left + plotW * v / maxX
        }
        let values = series.flatMap { $0.curve.map { max($0[1], 1) } }
        let lo = floor(log10(values.min() ?? 1)), hi = max(lo + 1, ceil(log10(values.max() ?? 10)))
        func yOf(_ us: Double) -> Double { top + plotH * (1 - (log10(max(us, 1)) - lo) / (hi - lo)) }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="28" font-size="15" font-weight="bold">\(escape(title))</text>

        """
        // Grid and axes.
        let ticks: [(Double, String)] = [(0, "0%"), (90, "90%"), (99, "99%"), (99.9, "99.9%"), (99.99, "99.99%"), (99.999, "99.999%")]
        for (p, name) in ticks {
            let x = xOf(p)
            s += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(top + plotH)\" stroke=\"#ddd\"/>\n"
            s += "<text x=\"\(x)\" y=\"\(top + plotH + 18)\" text-anchor=\"middle\">\(name)</text>\n"
        }
        var e = lo
        while e <= hi {
            for m in [1.0, 2, 5] where e + log10(m) <= hi {
                let v = pow(10, e) * m
                let y = yOf(v)
                s += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotW)\" y2=\"\(y)\" stroke=\"\(m == 1 ? "#ccc" : "#eee")\"/>\n"
                s += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(Report.micros(v))</text>\n"
            }
            e += 1
        }
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"#333\"/>\n"
        s += "<text x=\"\(left + plotW / 2)\" y=\"\(height - 18)\" text-anchor=\"middle\">percentile</text>\n"
        s += "<text x=\"18\" y=\"\(top + plotH / 2)\" text-anchor=\"middle\" transform=\"rotate(-90 18 \(top + plotH / 2))\">latency</text>\n"
        for (i, sr) in series.enumerated() {
            let color = palette[i % palette.count]
            let pts = sr.curve.map { String(format: "%.1f,%.1f", xOf($0[0]), yOf($0[1])) }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(pts)\"/>\n"
            let ly = top + 10 + Double(i) * 20
            s += "<line x1=\"\(left + plotW + 15)\" y1=\"\(ly)\" x2=\"\(left + plotW + 35)\" y2=\"\(ly)\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
            s += "<text x=\"\(left + plotW + 40)\" y=\"\(ly + 4)\">\(escape(sr.name))</text>\n"
        }
        s += "</svg>\n"
        return s
    }

    static func escape(_ t: String) -> String {
        t.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
